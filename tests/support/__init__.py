"""What the test suites share: loopback SMTP peers, a DNS server, the fault harness (real relay processes)."""
