"""p2w past one machine: image collections (folders, path lists, webdataset shards) embedded into clip-retrieval's
layout, part by part, in this process or on a Ray cluster (``p2w.datasets.embed``)."""
