"""The sample-fleet kit that the image, sensor and own tasks share: devices, each a stream of
samples of one shape (images, sensor segments, a table's rows), with one label per sample.

    store.py    the on-disk dataset (samples by device and time, labels per split) and its loader
    batches.py  batches of samples with their device's window; the model's outputs on a split
    task.py     FleetTask: data, training, evaluation per device, device graph and simulation
"""
