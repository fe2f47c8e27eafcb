"""Read, detect and map weight files into the original LDM/SGM key layout."""
