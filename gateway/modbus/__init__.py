"""Modbus TCP: the session engine facing clients and the upstream pool facing devices."""
