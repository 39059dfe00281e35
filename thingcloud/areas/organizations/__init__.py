"""Organizations (an extension): groups of users that own device types and applications together."""
