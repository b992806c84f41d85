"""End-to-end pipelines over base -> train -> merge -> eval: multi-order SFT (the demo) and PAFT."""
