"""Training data: SFT pairs (arith, GSM8K, Alpaca, code), preference pairs, synthetic model families."""
