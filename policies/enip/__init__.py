"""EtherNet/IP + CIP in the policy: services by (class, service), tag patterns, checking ``enip = [...]``
entries, the decision tables and explanations. Nothing is imported here: import the modules themselves."""
