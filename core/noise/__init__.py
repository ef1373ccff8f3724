"""Sans-IO Noise IK (ts2021) handshake and transport records."""
