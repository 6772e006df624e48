"""Mappers (layer 2): the networks that turn image features into pseudo-word tokens, their files, the registry of
``P2W_HOME/mappers`` (names, defaults, known published mappers) and their downloads."""
