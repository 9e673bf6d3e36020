"""EtherNet/IP + CIP: the session engine facing clients and the upstream pool facing devices."""
