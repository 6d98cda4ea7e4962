"""The shared MuJoCo scene kit the suites (tabletop, bimanual, LIBERO) stand on."""
