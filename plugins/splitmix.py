"""SplitMix64's constants: shared by the numpy stream (uniforms.py) and the compiled one (jit_kernels.py)."""

GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (2**64 / golden ratio)
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
SCALE = 2.0**-24  # 24 random bits per uniform in [0, 1)
