"""The photo library (layer 3): one SQLite catalog per backbone, its ANN index, ``index`` and ``search``."""
