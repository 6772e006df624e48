"""p2w's core (layer 1): backbone names and resolution, weights and checkpoints, downloads, devices and precision,
image opening, the one photo walker, prompts and query modes, and image features. It knows nothing of mappers."""
