"""Routing: which pool and which replica take a request (``dispatch``, ``policy``,
``pool_stats``, ``storm``), the ingress side that drives it (``router``), Serve's router
pinned to the ingress's pick (``pinned``), and variant weights (``variants``).
"""
