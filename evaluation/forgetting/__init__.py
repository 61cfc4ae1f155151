"""The forgetting report: sequential full fine-tuning (alone, with replay, EWC, L2-SP) against
a LoRA per domain and the router. `continual` holds the remedies, `probe` what is measured,
`report` the runs, the table and the plot; `bench/forgetting.py` is its command."""
