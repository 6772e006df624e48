"""Mapper training (layer 3): Pic2Word's objective on unlabeled images, the feature cache of the training set, the
step, checkpoints, the loop and DDP. ``p2w.training.loop.train(TrainConfig(...))`` is the entry point."""
