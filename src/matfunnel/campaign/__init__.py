"""matfunnel.campaign"""
