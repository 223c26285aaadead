"""Execution: broker protocol, simulated broker, orders and fills, the trading-session engine."""
