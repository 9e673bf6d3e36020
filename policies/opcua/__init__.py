"""OPC UA in the policy: services, node patterns, browse paths, operations, checking ``opcua = [...]``
entries and asset settings, the decision tables and explanations. Nothing is imported here: import the
modules themselves."""
