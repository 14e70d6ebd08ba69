"""matfunnel.makers"""
