-- Synthetic data only: no real person is described here.
CREATE DATABASE IF NOT EXISTS CLINICAL;
CREATE SCHEMA IF NOT EXISTS CLINICAL.PUBLIC;
CREATE SCHEMA IF NOT EXISTS CLINICAL.EHR;
CREATE TABLE CLINICAL.EHR.PATIENTS (ID INT, NAME VARCHAR, SSN VARCHAR, DOB DATE, BALANCE NUMBER(10,2), ADMITTED TIMESTAMP_NTZ, ACTIVE BOOLEAN);
INSERT INTO CLINICAL.EHR.PATIENTS VALUES
  (1, 'Alice Synthetic', '900-00-0001', '1980-01-02', 10.50, '2024-05-06 07:08:09.123456', TRUE),
  (2, 'Bob Synthetic', '900-00-0002', '1975-11-30', 0.00, '2024-06-01 00:00:00', FALSE),
  (3, 'Carol Synthetic', '900-00-0003', '1990-03-04', 1.25, NULL, TRUE);
CREATE TABLE CLINICAL.EHR.VISITS (ID INT, PATIENT_ID INT, VISITED DATE, NOTE VARCHAR);
INSERT INTO CLINICAL.EHR.VISITS VALUES (10, 1, '2024-05-06', 'checkup'), (11, 3, '2024-07-08', 'follow-up');
CREATE DATABASE IF NOT EXISTS BULK;
CREATE SCHEMA IF NOT EXISTS BULK.PUBLIC;
CREATE TABLE BULK.PUBLIC.EVENTS AS SELECT range AS ID, 'event-' || range AS LABEL, range * 0.5 AS AMOUNT FROM range(100000);
-- Contact details and free text for masking tests (patients 1-3 above); PROFILE is VARIANT.
CREATE TABLE CLINICAL.EHR.PATIENT_CONTACTS (PATIENT_ID INT, EMAIL VARCHAR, PHONE VARCHAR, ZIP VARCHAR, MRN VARCHAR, NOTES VARCHAR, PROFILE VARIANT);
INSERT INTO CLINICAL.EHR.PATIENT_CONTACTS
  SELECT 1, 'alice.synthetic@example.org', '(415) 555-0101', '94110', 'MRN-000101',
         'Called patient about results. SSN on file 900-00-0001, reach her at alice.synthetic@example.org',
         PARSE_JSON('{"name": "Alice Synthetic", "preferred_contact": "email", "language": "en"}')
  UNION ALL
  SELECT 2, 'bob.synthetic@example.org', '(212) 555-0102', '10027', 'MRN-000102',
         'Insurance form lists 900-00-0002; follow up via bob.synthetic@example.org',
         PARSE_JSON('{"name": "Bob Synthetic", "preferred_contact": "phone", "language": "en"}')
  UNION ALL
  SELECT 3, 'carol.synthetic@example.org', '(312) 555-0103', '60614', 'MRN-000103',
         'Verified identity with SSN 900-00-0003 and email carol.synthetic@example.org',
         PARSE_JSON('{"name": "Carol Synthetic", "preferred_contact": "mail", "language": "es"}');
-- 120,000 patients for chunked masked results. SSNs are unique and SSN-shaped (700-GG-SSSS,
-- group 10-23, serial 1000-9999: never the all-zero groups real SSNs lack); MRNs MRN-<7 digits>
-- (never a prefix of the 6-digit MRNs above); DOBs spread over 1930-1998.
CREATE TABLE CLINICAL.EHR.PATIENTS_BULK (ID INT, NAME VARCHAR, SSN VARCHAR, DOB DATE, MRN VARCHAR, AMOUNT NUMBER(10,2));
INSERT INTO CLINICAL.EHR.PATIENTS_BULK
  SELECT range,
         'Bulk Person ' || range,
         '700-' || TO_VARCHAR(CAST(10 + FLOOR(range / 9000) AS INT)) || '-' || TO_VARCHAR(1000 + MOD(range, 9000)),
         DATEADD(day, MOD(range * 37, 25000), TO_DATE('1930-01-01')),
         'MRN-' || LPAD(TO_VARCHAR(range), 7, '0'),
         MOD(range * 13, 100000) / 4
  FROM range(120000);
