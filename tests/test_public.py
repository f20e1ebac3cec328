"""The public site end to end: lookup, exposure, claim."""

from __future__ import annotations

from conftest import import_patients, lookup, patient_row


def test_verified_person_sees_exposure(app, client):
    assert import_patients(app, [patient_row()]) == []
    response = lookup(client, last_name="garcia lopez", date_of_birth="1980-04-23", zip_code="10001-2345", ssn_last4="6789")
    assert response.status_code == 303
    page = client.get("/exposure").get_data(as_text=True)
    assert 'id="field-ssn"' in page
