"""Layer run: validate and plan a run, drive its stages and anytime cells on Ray, assemble its report."""
