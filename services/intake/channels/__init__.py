"""Channel adapters: parsing and mapping only. Each turns what its channel sends into a
`Submission` (or a reply to an existing feedback) and hands it to the `Registrar`."""
