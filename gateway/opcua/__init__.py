"""OPC UA: the session engine facing clients and the device sessions facing the device."""
