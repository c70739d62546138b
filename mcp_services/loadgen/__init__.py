"""tori-loadgen: a load generator for the TORI Memory fleet (soak tests, dashboards)."""
