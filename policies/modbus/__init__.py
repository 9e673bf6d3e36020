"""Modbus TCP in the policy: checking ``modbus = [...]`` entries, the decision tables per function code,
and explanations. Nothing is imported here: import the modules themselves."""
