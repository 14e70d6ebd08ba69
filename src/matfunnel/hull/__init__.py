"""matfunnel.hull"""
