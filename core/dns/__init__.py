"""DNS for the tailnet: the ``dns:`` settings, their checks, the tailcfg DNSConfig they become,
extra records from a watched file, and the settings in force at run time (config file, or the
admin API's stored replacement). docs/dns.md is the user's side of it."""
