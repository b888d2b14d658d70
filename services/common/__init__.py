"""What every service needs the same way: settings, database, bus, exactly-once positions."""
