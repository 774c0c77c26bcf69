"""Training and inference: joins data and models; writes through reports."""
