"""Probe drivers: one module per protocol, driving its sans-IO codec over a stream the
transport dialled. :mod:`workers.probes.registry` names them."""
