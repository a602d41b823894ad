"""`python -m monitoring --config FILE`: run the monitoring worker from a MonitoringConfig JSON file."""

from monitoring.run import main

main()
