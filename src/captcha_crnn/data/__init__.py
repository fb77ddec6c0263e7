"""Images and labels: everything about data, nothing about models."""
