"""The sensors task: activity recognition from phone accelerometer and gyroscope (UCI HAPT), one device per user."""

NAME = "sensors"
BUILDER = "duet.tasks.sensors.task:task"  # recorded in every dataset, run and bundle of the task
