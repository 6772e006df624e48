"""``p2w serve`` (layer 4): one resident process holding the engine, the catalog and its ANN index, serving a web
page and a JSON API on loopback; ``p2w search`` finds it through a record in ``P2W_HOME/servers``.

- ``service``: the resident engine (no HTTP): uploads, composed searches, thumbnails, originals by catalog id.
- ``http``: the Starlette app: token, Host and Origin checks, body limits, the page's assets.
- ``discovery``: the record a running server leaves for warm ``p2w search`` (stdlib only, no torch).
- ``client``: the warm search's HTTP client (stdlib only).
- ``run``: binds the socket, writes the record, runs uvicorn, removes the record.
"""
