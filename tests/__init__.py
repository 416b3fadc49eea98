"""CityStream test suite (a regular package, so that `tests.*` never resolves to a stray site-packages `tests`)."""
