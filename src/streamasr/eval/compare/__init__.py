"""`streamasr bench compare`: other ASR families beside Nemotron under one normalizer, statistics and clock.

One module per backend (each behind `backend.Backend`), the system-spec grammar (`spec.py`), the overlap
merge and LocalAgreement policies shared by chunked backends (`merge.py`), the process-per-system worker
(`worker.py`), the run and its statistics (`harness.py`), the table and plot (`report.py`) and the command
line (`cli.py`).
"""
