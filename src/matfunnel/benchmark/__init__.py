"""matfunnel.benchmark"""
