"""Wire protocols: ``v2``, the KServe/Triton v2 inference protocol (JSON and binary)."""
