-- A tenant setting: may a purchase-order receipt bring more than was
-- ordered of a line? Refused unless set (SPEC: procurement).
ALTER TABLE tenants ADD COLUMN allow_over_delivery boolean NOT NULL DEFAULT false;
