"""Pure nn.Module code. Attribute names equal the original checkpoint keys; no file or network I/O."""
