"""``lesion-factorizer serve``: a segmentation server for a department's GPU, and its client.

``uploads`` (what an upload may be, judged from its first bytes), ``jobs`` (the queue and the
per-device worker processes), ``app`` (the HTTP API; needs the ``serve`` extra) and ``client``
(standard library only, Python 3.9+: ``batch --server`` and the Slicer module use it).
"""
