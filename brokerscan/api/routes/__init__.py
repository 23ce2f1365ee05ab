"""One router per resource: services, count, trends, hosts, report, diff, sweeps,
schedules, export, query (explain and fields), session, health."""
