"""DeepSeek-V3-style Mixture-of-Experts decoder core. Imports nothing from the other omnifuse packages."""
