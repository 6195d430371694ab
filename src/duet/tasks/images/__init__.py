"""The image-classification task: devices with their own class mix and camera/handwriting
shift (a fleet built from real digits, or a user's own images). Only what is specific
to images lives here; the generator, head, train loop, service and device runtime are shared."""

NAME = "images"
BUILDER = "duet.tasks.images.task:task"  # recorded in every dataset, run and bundle of the task
