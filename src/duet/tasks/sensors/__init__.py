"""The sensors task: activity recognition from phone accelerometer and gyroscope (UCI HAPT), one device per user."""
