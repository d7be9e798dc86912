"""The domain shared by services and tools: report admission (validation, reasons, screening, cases) and the agency registry."""
