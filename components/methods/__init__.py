"""Layer methods: the registry from config switches to plug-ins on the two loops (and method-specific driver-side code)."""
