"""Agent drivers: how the wrapper runs one kind of agent and reads what it prints."""
