"""The Python-backend models of an exported Triton repository (`export-triton`) and what they share.

`bls_model.py` and `local_model.py` are copied into the repository as `<model>/1/model.py`; they run inside Triton's
Python backend and import the toolkit from its environment (`common.py` turns Triton requests into `Scorer` calls
and results into responses). Nothing here is imported by the rest of the toolkit."""
