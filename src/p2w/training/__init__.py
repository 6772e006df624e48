"""Mapper training (layer 3): Pic2Word's objective on unlabeled images, LinCIR's on captions, or both; the feature
cache of the training set, the steps, checkpoints, the loop and DDP. ``p2w.training.loop.train(TrainConfig(...))``
is the entry point."""
